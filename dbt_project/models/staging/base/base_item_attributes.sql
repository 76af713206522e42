-- Every landed attribute row, typed, with the reason it is rejected (null when it is kept).

with

source as (

    select * from {{ source('landing', 'item_attributes') }}

),

-- an attribute row belongs to the item row it was read from (same file and row)
item_rows as (

    select source_file, source_row, item_id, rejection_reason from {{ ref('base_items') }}

),

typed as (

    select
        source_file,
        source_row,
        {{ clean_text('item_id') }} as item_id,
        lower({{ clean_text('attribute_name') }}) as attribute_name,
        {{ clean_text('attribute_value') }} as attribute_value
    from source

),

checked as (

    select
        typed.*,
        case
            when typed.item_id is null then 'missing_item_id'
            when typed.attribute_name is null or typed.attribute_value is null
                then 'missing_value'
            when item_rows.item_id is distinct from typed.item_id then 'unknown_item'
            when item_rows.rejection_reason is not null then 'rejected_item'
        end as invalid_reason
    from typed
    left join item_rows
        on typed.source_file = item_rows.source_file
        and typed.source_row = item_rows.source_row

),

final as (

    select
        source_file,
        source_row,
        item_id,
        attribute_name,
        attribute_value,
        {{ rejection_reason(['item_id', 'attribute_name', 'attribute_value'], 'duplicate_attribute') }} as rejection_reason
    from checked

)

select * from final
