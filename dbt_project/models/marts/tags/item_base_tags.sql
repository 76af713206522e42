-- The current canonical base tags: each item's current generation, one row per canonical tag.
-- Raw tags go through the tag vocabulary (spelling variants and near-duplicates become one
-- tag, junk is dropped); a raw tag the vocabulary has not seen yet stays as written. The one
-- definition of an item's base tags: the finetuning examples, the adapter and the BETag
-- prompts read this table (built by its own dbt step, right after llm/tag_vocabulary).

{{ config(tags=['canonical_base_tags']) }}

with

latest as (

    select * from {{ ref('int_base_tag_generations_current') }}

),

vocabulary as (

    select * from {{ ref('stg_tag_vocabulary') }}

),

raw_tags as (

    select
        latest.item_id,
        raw.raw_tag,
        raw.raw_rank,
        latest.model,
        latest.prompt_version,
        latest.generated_at
    from latest,
        unnest(latest.tags) with ordinality as raw(raw_tag, raw_rank)

),

mapped as (

    select
        raw_tags.*,
        case when vocabulary.raw_tag is null then raw_tags.raw_tag else vocabulary.canonical_tag end as tag
    from raw_tags
    left join vocabulary on raw_tags.raw_tag = vocabulary.raw_tag

),

-- two raw tags of one item may stand for one canonical tag: it keeps the better rank
deduplicated as (

    select * from mapped
    where tag is not null
    qualify row_number() over (partition by item_id, tag order by raw_rank) = 1

),

final as (

    select
        item_id,
        tag,
        row_number() over (partition by item_id order by raw_rank) as tag_rank,
        raw_tag,
        model,
        prompt_version,
        generated_at
    from deduplicated

)

select * from final
