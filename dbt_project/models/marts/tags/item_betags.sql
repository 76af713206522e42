-- The current BETags: each item's latest generation, aggregated over beams, one row per tag.

with

latest as (

    select * from {{ ref('int_betag_generations_selected') }}
    where variant = 'betag'

),

ranked as (

    select * from {{ ref('int_betag_tags_ranked') }}
    where variant = 'betag'

),

final as (

    select
        latest.item_id,
        tag.weighted.tag as tag,
        tag.weighted.n_beams as weight,
        tag.weighted.score as score,
        tag.tag_rank,
        latest.adapter_id,
        latest.generated_at
    from latest
    inner join ranked using (item_id),
        unnest(ranked.tags) with ordinality as tag(weighted, tag_rank)

)

select * from final
