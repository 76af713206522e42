-- Every landed native-tag row, typed, with the reason it is rejected (null when it is kept).

with

source as (

    select * from {{ source('landing', 'native_tags') }}

),

known_items as (

    select item_id from {{ ref('base_items') }}
    where rejection_reason is null

),

-- a tag read from an item row (the generic items file's native_tags column) belongs to that row
item_rows as (

    select source_file, source_row, rejection_reason from {{ ref('base_items') }}

),

typed as (

    select
        source_file,
        source_row,
        {{ clean_text('item_id') }} as item_id,
        {{ clean_text('tag') }} as tag,
        {{ clean_text('user_id') }} as user_id,
        {{ clean_text('tagged_at') }} as tagged_at_text,
        {{ parse_timestamp('tagged_at') }} as tagged_at
    from source

),

checked as (

    select
        typed.*,
        case
            when typed.item_id is null then 'missing_item_id'
            when typed.tag is null then 'missing_tag'
            when typed.tagged_at_text is not null and typed.tagged_at is null
                then 'bad_timestamp'
            when item_rows.rejection_reason is not null then 'rejected_item'
            when known_items.item_id is null then 'unknown_item'
        end as invalid_reason
    from typed
    left join known_items on typed.item_id = known_items.item_id
    left join item_rows
        on typed.source_file = item_rows.source_file
        and typed.source_row = item_rows.source_row

),

final as (

    select
        source_file,
        source_row,
        item_id,
        tag,
        user_id,
        tagged_at_text,
        tagged_at,
        {{ rejection_reason(['item_id', 'lower(tag)', 'user_id', 'tagged_at'], 'duplicate_tag') }} as rejection_reason
    from checked

)

select * from final
