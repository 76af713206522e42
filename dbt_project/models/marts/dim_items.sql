-- The item catalog: the structured description that tagging prompts are built from.
-- Every valid item is here, including items with no behavior (cold start), each flagged
-- new or not (new-item protocol, int_kcore_items_flagged_new).

with

items as (

    select * from {{ ref('stg_items') }}

),

attributes as (

    select * from {{ ref('stg_item_attributes') }}

),

attribute_values as (

    select
        item_id,
        attribute_name,
        list(attribute_value order by source_row, attribute_value) as attribute_values
    from attributes
    group by item_id, attribute_name

),

attribute_maps as (

    select
        item_id,
        map_from_entries(
            list({'key': attribute_name, 'value': attribute_values} order by attribute_name)
        ) as attributes,
        string_agg(
            attribute_name || ': ' || array_to_string(attribute_values, ', '), '; '
            order by attribute_name
        ) as attributes_text
    from attribute_values
    group by item_id

),

native_tags as (

    select item_id, count(*) as n_native_tags
    from {{ ref('fct_item_native_tags') }}
    group by item_id

),

popularity as (

    select item_id, n_train_interactions, is_in_kcore from {{ ref('fct_item_popularity') }}

),

new_items as (

    select item_id, is_new_item from {{ ref('int_kcore_items_flagged_new') }}

),

first_seen as (

    select * from {{ ref('int_items_first_seen') }}

),

first_load as (

    select min(first_seen_at) as first_load_at from first_seen

),

final as (

    select
        items.item_id,
        items.title,
        items.description,
        attribute_maps.attributes,
        attribute_maps.attributes_text,
        coalesce(native_tags.n_native_tags, 0) as n_native_tags,
        popularity.n_train_interactions,
        popularity.is_in_kcore,
        coalesce(new_items.is_new_item, false) as is_new_item,
        first_seen.first_seen_at,
        first_seen.first_seen_at > first_load.first_load_at as is_added_after_first_load
    from items
    cross join first_load
    left join first_seen on items.item_id = first_seen.item_id
    left join attribute_maps on items.item_id = attribute_maps.item_id
    left join native_tags on items.item_id = native_tags.item_id
    left join popularity on items.item_id = popularity.item_id
    left join new_items on items.item_id = new_items.item_id

)

select * from final
