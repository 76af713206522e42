with

checked as (

    select * from {{ ref('base_events') }}

),

final as (

    select
        event_id,
        user_id,
        item_id,
        event_at,
        event_type,
        event_value,
        source_row
    from checked
    where rejection_reason is null

)

select * from final
