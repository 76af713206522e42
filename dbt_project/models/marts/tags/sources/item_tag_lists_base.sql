-- The current base tags of each item as one list, through the tag vocabulary, in rank order.

with

base_tags as (

    select * from {{ ref('item_base_tags') }}

),

final as (

    select
        item_id,
        list(tag order by tag_rank) as tags
    from base_tags
    group by item_id

)

select * from final
