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

ranked as (

    select
        *,
        row_number() over (partition by item_id order by source_row) as n_occurrence
    from typed

),

final as (

    select
        source_file,
        source_row,
        item_id,
        title,
        description,
        case
            when item_id is null then 'missing_item_id'
            when title is null then 'missing_title'
            when n_occurrence > 1 then 'duplicate_item'
        end as rejection_reason
    from ranked

)

select * from final
