{{ config(meta={"dagster": {"ref": {"name": "fct_behavior_sessions"}}}) }}

-- Leakage guard: no validation or test interaction may reach the behavior sessions that
-- feed finetuning, neither as an event (intermediate) nor by position (mart).

with

eval_events as (

    select event_id, user_id, split
    from {{ ref('int_interactions_split') }}
    where split in ('validation', 'test')

),

leaked_events as (

    select sessionized.session_id, eval_events.split, 'event in session' as problem
    from {{ ref('int_train_interactions_sessionized') }} as sessionized
    inner join eval_events on sessionized.event_id = eval_events.event_id

),

leaked_positions as (

    select sessions.session_id, 'validation' as split, 'session reaches a target position' as problem
    from {{ ref('fct_behavior_sessions') }} as sessions
    inner join {{ ref('fct_user_sequences') }} as sequences
        on sessions.user_id = sequences.user_id
    where sessions.last_position >= sequences.validation_position

),

final as (

    select * from leaked_events
    union all
    select * from leaked_positions

)

select * from final
