-- The aggregated tags of each item's current generation of every BETag variant (the full
-- method and the Table 3 ablations), best first (ranked as the betag_aggregation var says).

with

generations as (

    select * from {{ ref('int_betag_tags_ranked') }}

),

final as (

    select
        item_id,
        variant,
        list_transform(tags, lambda weighted: weighted.tag) as tags
    from generations

)

select * from final
