-- The count-based reference tags of each item (no LLM) as one list, in rank order.

with

propagated_tags as (

    select * from {{ ref('item_propagated_tags') }}

),

final as (

    select
        item_id,
        list(tag order by tag_rank) as tags
    from propagated_tags
    group by item_id

)

select * from final
