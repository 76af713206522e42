-- One tag document per k-core item and tag source, for retrieval: the tags in rank order.
-- Items without tags of a source get an empty document rather than no row. The sources are
-- the betag_tag_sources var (dbt_project.yml): each one's model holds (item_id, tags), and a
-- BETag variant's rows are those of its variant.

with

items as (

    select item_id from {{ ref('dim_items') }}
    where is_in_kcore

),

sources as (

    {% for source in tag_sources() %}
    select '{{ source.name }}' as tag_source, item_id, tags
    from {{ ref(source.model) }}
    {%- if source.betag_variant is defined %}
    where variant = '{{ source.betag_variant }}'
    {%- endif %}
    {% if not loop.last %}union all{% endif %}
    {% endfor %}

),

source_names as (

    select * from (
        values
        {%- for name in tag_source_names() %}
            ('{{ name }}'){{ "," if not loop.last }}
        {%- endfor %}
    ) as t(tag_source)

),

final as (

    select
        items.item_id,
        source_names.tag_source,
        coalesce(sources.tags, []) as tags,
        len(coalesce(sources.tags, [])) as n_tags,
        array_to_string(coalesce(sources.tags, []), ' | ') as document
    from items
    cross join source_names
    left join sources
        on items.item_id = sources.item_id
        and source_names.tag_source = sources.tag_source

)

select * from final
