-- Every landed event row, typed, with the reason it is rejected (null when it is kept).
-- Only exact repeats (same user, item, time and type) count as duplicates: repeated
-- interactions with an item at different times are real behavior and are kept.

with

source as (

    select * from {{ source('landing', 'events') }}

),

known_items as (

    select item_id from {{ ref('base_items') }}
    where rejection_reason is null

),

typed as (

    select
        source_file,
        source_row,
        {{ clean_text('user_id') }} as user_id,
        {{ clean_text('item_id') }} as item_id,
        {{ clean_text('event_at') }} as event_at_text,
        {{ parse_timestamp('event_at') }} as event_at,
        coalesce({{ clean_text('event_type') }}, 'interaction') as event_type,
        {{ clean_text('event_value') }} as event_value_text,
        try_cast(trim(event_value) as double) as event_value
    from source

),

checked as (

    select
        typed.*,
        case
            when typed.user_id is null then 'missing_user_id'
            when typed.item_id is null then 'missing_item_id'
            when typed.event_at_text is null then 'missing_timestamp'
            when typed.event_at is null then 'bad_timestamp'
            when typed.event_at < cast('{{ var("event_at_min") }}' as timestamp)
                or typed.event_at >= cast('{{ var("event_at_max") }}' as timestamp)
                then 'timestamp_out_of_range'
            when typed.event_value_text is not null and typed.event_value is null
                then 'bad_value'
            when known_items.item_id is null then 'unknown_item'
        end as invalid_reason
    from typed
    left join known_items on typed.item_id = known_items.item_id

),

final as (

    select
        source_file || '#' || source_row as event_id,
        source_file,
        source_row,
        user_id,
        item_id,
        event_at_text,
        event_at,
        event_type,
        event_value_text,
        event_value,
        {{ rejection_reason(['user_id', 'item_id', 'event_at', 'event_type'], 'duplicate_event') }} as rejection_reason
    from checked

)

select * from final
