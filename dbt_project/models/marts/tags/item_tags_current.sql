-- The tags to serve: each item's current base tags and BETags, one row per tag, with what
-- generated them. Rebuilt by dbt in one transaction, so readers never see a half-refresh.
-- BETags are ranked as they are served everywhere else (int_betag_tags_ranked, as the
-- betag_aggregation var says); the history in item_tag_versions keeps each generation's own order.

with

versions as (

    select * from {{ ref('item_tag_versions') }}
    where is_current

),

served_betags as (

    select
        item_id,
        'betag' as tag_source,
        list_transform(tags, lambda t: {'tag': t.tag, 'weight': t.n_beams::double}) as tags
    from {{ ref('int_betag_tags_ranked') }}
    where variant = 'betag'

),

current_lists as (

    select
        versions.* replace (coalesce(served_betags.tags, versions.tags) as tags)
    from versions
    left join served_betags using (item_id, tag_source)

),

final as (

    select
        current_lists.item_id,
        current_lists.tag_source,
        tag.entry.tag as tag,
        tag.entry.weight as weight,
        tag.tag_rank,
        current_lists.model,
        current_lists.adapter_id,
        current_lists.prompt_version,
        current_lists.generated_at
    from current_lists,
        unnest(current_lists.tags) with ordinality as tag(entry, tag_rank)

)

select * from final
