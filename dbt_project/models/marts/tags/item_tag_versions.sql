-- Every published generation of an item's base tags and BETags: one row per item, source and
-- generation, newest first. Nothing is overwritten; the current one has is_current.

with

base_generations as (

    select * from {{ ref('stg_base_tag_generations') }}

),

betag_generations as (

    select * from {{ ref('stg_betag_generations') }}
    where variant = 'betag'

),

base_versions as (

    select
        item_id,
        'base' as tag_source,
        list_transform(tags, lambda tag: {'tag': tag, 'weight': 1.0}) as tags,
        model,
        'none' as adapter_id,
        prompt_version,
        input_hash,
        item_shard,
        generated_at
    from base_generations

),

betag_versions as (

    select
        item_id,
        'betag' as tag_source,
        list_transform(tags, lambda t: {'tag': t.tag, 'weight': t.n_beams::double}) as tags,
        model,
        adapter_id,
        prompt_version,
        input_hash,
        item_shard,
        generated_at
    from betag_generations

),

versions as (

    select * from base_versions
    union all
    select * from betag_versions

),

final as (

    select
        *,
        len(tags) as n_tags,
        row_number() over (
            partition by item_id, tag_source order by generated_at desc, adapter_id desc, input_hash desc
        ) as version_rank,
        version_rank = 1 as is_current
    from versions

)

select * from final
