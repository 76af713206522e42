-- The current base tags: each item's latest generation, one row per tag.

with

generations as (

    select * from {{ ref('stg_base_tag_generations') }}

),

latest as (

    select * from generations
    qualify row_number() over (partition by item_id order by generated_at desc, prompt_version desc) = 1

),

final as (

    select
        latest.item_id,
        tag.tag,
        tag.tag_rank,
        latest.model,
        latest.prompt_version,
        latest.generated_at
    from latest,
        unnest(latest.tags) with ordinality as tag(tag, tag_rank)

)

select * from final
