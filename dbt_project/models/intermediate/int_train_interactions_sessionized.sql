-- Behavior sessions over the learnable train interactions only (validation and test
-- targets and new items never enter): lag -> gap -> running sum -> session id. The gap is
-- measured between learnable neighbours, so a removed new item's interaction does not
-- split a session. A gap longer than session_gap_minutes starts
-- a new session; a session longer than session_max_items is cut into consecutive chunks
-- so no behavior is lost to a cap.

with

train as (

    select * from {{ ref('int_learnable_train_interactions') }}

),

lagged as (

    select
        *,
        lag(event_at) over (partition by user_id order by position) as previous_event_at
    from train

),

gapped as (

    select
        *,
        case
            when previous_event_at is null then true
            when event_at - previous_event_at
                > to_minutes(cast({{ var('session_gap_minutes') }} as bigint)) then true
            else false
        end as is_session_start
    from lagged

),

numbered as (

    select
        *,
        sum(cast(is_session_start as integer)) over (
            partition by user_id order by position rows unbounded preceding
        ) as activity_number
    from gapped

),

chunked as (

    select
        *,
        row_number() over (
            partition by user_id, activity_number order by position
        ) as position_in_activity
    from numbered

),

final as (

    select
        user_id
            || '-' || activity_number
            || '-' || ((position_in_activity - 1) // {{ var('session_max_items') }} + 1)
            as session_id,
        event_id,
        user_id,
        item_id,
        event_at,
        position,
        (position_in_activity - 1) % {{ var('session_max_items') }} + 1
            as position_in_session
    from chunked

)

select * from final
