-- Every landed row that staging rejected, with its reason: nothing is dropped silently.

with

items as (

    select
        'items' as source_table, source_file, source_row, rejection_reason,
        item_id, null as user_id,
        to_json({'item_id': item_id, 'title': title}) as raw_values
    from {{ ref('base_items') }}
    where rejection_reason is not null

),

item_attributes as (

    select
        'item_attributes' as source_table, source_file, source_row, rejection_reason,
        item_id, null as user_id,
        to_json({'attribute_name': attribute_name, 'attribute_value': attribute_value})
            as raw_values
    from {{ ref('base_item_attributes') }}
    where rejection_reason is not null

),

events as (

    select
        'events' as source_table, source_file, source_row, rejection_reason,
        item_id, user_id,
        to_json({'event_at': event_at_text, 'event_type': event_type, 'event_value': event_value_text})
            as raw_values
    from {{ ref('base_events') }}
    where rejection_reason is not null

),

native_tags as (

    select
        'native_tags' as source_table, source_file, source_row, rejection_reason,
        item_id, user_id,
        to_json({'tag': tag, 'tagged_at': tagged_at_text}) as raw_values
    from {{ ref('base_native_tags') }}
    where rejection_reason is not null

),

final as (

    select * from items
    union all
    select * from item_attributes
    union all
    select * from events
    union all
    select * from native_tags

)

select * from final
