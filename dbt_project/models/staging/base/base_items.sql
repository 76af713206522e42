-- Every landed item row, typed, with the reason it is rejected (null when it is kept).

with

source as (

    select * from {{ source('landing', 'items') }}

),

typed as (

    select
        source_file,
        source_row,
        {{ clean_text('item_id') }} as item_id,
        {{ clean_text('title') }} as title,
        {{ clean_text('description') }} as description
    from source

),

checked as (

    select
        *,
        case
            when item_id is null then 'missing_item_id'
            when title is null then 'missing_title'
        end as invalid_reason
    from typed

),

final as (

    select
        source_file,
        source_row,
        item_id,
        title,
        description,
        {{ rejection_reason(['item_id'], 'duplicate_item') }} as rejection_reason
    from checked

)

select * from final
