-- Native tags per item, one row per normalized tag with how often it was applied and where
-- it came from (the tag file, or an attribute standing in for it: stg_native_tags).

with

tags as (

    select * from {{ ref('stg_native_tags') }}
    where tag_normalized <> ''

),

final as (

    select
        item_id,
        tag_normalized as tag,
        origin,
        count(*) as n_taggings,
        count(distinct user_id) as n_users,
        min(tagged_at) as first_tagged_at
    from tags
    group by item_id, tag_normalized, origin

)

select * from final
