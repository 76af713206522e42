-- The native (human) tags of each item as one list, most often applied first.

with

native_tags as (

    select * from {{ ref('fct_item_native_tags') }}

),

final as (

    select
        item_id,
        list(tag order by n_taggings desc, tag) as tags
    from native_tags
    group by item_id

)

select * from final
