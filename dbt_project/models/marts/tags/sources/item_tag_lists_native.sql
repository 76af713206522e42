-- The native tags of each item as one list (human tags, or attribute values standing in for
-- them: stg_native_tags), most often applied first.

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
