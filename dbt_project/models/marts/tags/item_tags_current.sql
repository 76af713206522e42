-- The tags to serve: each item's current base tags and BETags, one row per tag, with what
-- generated them. Rebuilt by dbt in one transaction, so readers never see a half-refresh.

with

versions as (

    select * from {{ ref('item_tag_versions') }}
    where is_current

),

final as (

    select
        versions.item_id,
        versions.tag_source,
        tag.entry.tag as tag,
        tag.entry.weight as weight,
        tag.tag_rank,
        versions.model,
        versions.adapter_id,
        versions.prompt_version,
        versions.generated_at
    from versions,
        unnest(versions.tags) with ordinality as tag(entry, tag_rank)

)

select * from final
