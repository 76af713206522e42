-- One tag document per k-core item and tag source, for retrieval: the tags in rank order.
-- Items without tags of a source get an empty document rather than no row.

with

items as (

    select item_id from {{ ref('dim_items') }}
    where is_in_kcore

),

native as (

    select item_id, list(tag order by n_taggings desc, tag) as tags
    from {{ ref('fct_item_native_tags') }}
    group by item_id

),

base as (

    select item_id, list(tag order by tag_rank) as tags
    from {{ ref('item_base_tags') }}
    group by item_id

),

-- the base tags as generated, before the tag vocabulary (to measure what it changes)
base_raw as (

    select item_id, tags
    from {{ ref('stg_base_tag_generations') }}
    qualify row_number() over (partition by item_id order by generated_at desc, prompt_version desc) = 1

),

betag as (

    select item_id, list(tag order by tag_rank) as tags
    from {{ ref('item_betags') }}
    group by item_id

),

-- the Table 3 ablations, each item's latest generation of the variant
betag_ablations as (

    select
        'betag_' || variant as tag_source,
        item_id,
        list_transform(tags, lambda weighted: weighted.tag) as tags
    from {{ ref('int_betag_generations_selected') }}
    where variant <> 'betag'

),

propagated as (

    select item_id, list(tag order by tag_rank) as tags
    from {{ ref('item_propagated_tags') }}
    group by item_id

),

sources as (

    select 'native' as tag_source, * from native
    union all
    select 'base' as tag_source, * from base
    union all
    select 'base_raw' as tag_source, * from base_raw
    union all
    select 'betag' as tag_source, * from betag
    union all
    select * from betag_ablations
    union all
    select 'propagated' as tag_source, * from propagated

),

source_names as (

    select * from (
        values
            ('native'), ('base'), ('base_raw'), ('betag'),
            ('betag_no_finetune'), ('betag_one_beam'), ('betag_neither'),
            ('propagated')
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
