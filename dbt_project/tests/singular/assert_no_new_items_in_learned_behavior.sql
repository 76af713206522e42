{{ config(meta={"dagster": {"ref": {"name": "fct_behavior_sessions"}}}) }}

-- Leakage guard of the new-item protocol: no new item may reach what the pipeline learns
-- from, neither the behavior sessions that feed finetuning (intermediate and mart), nor
-- the transitions (either side), nor the learnable popularity.

with

new_items as (

    select item_id from {{ ref('dim_items') }}
    where is_new_item

),

in_session_events as (

    select sessionized.item_id, 'session event' as problem
    from {{ ref('int_train_interactions_sessionized') }} as sessionized
    inner join new_items on sessionized.item_id = new_items.item_id

),

session_items as (

    select unnest(item_ids) as item_id
    from {{ ref('fct_behavior_sessions') }}

),

in_sessions as (

    select session_items.item_id, 'behavior session' as problem
    from session_items
    inner join new_items on session_items.item_id = new_items.item_id

),

in_transitions as (

    select new_items.item_id, 'transition' as problem
    from {{ ref('int_item_transitions_counted') }} as transitions
    inner join new_items
        on new_items.item_id in (transitions.item_id, transitions.next_item_id)

),

in_popularity as (

    select popularity.item_id, 'learnable popularity' as problem
    from {{ ref('fct_item_popularity') }} as popularity
    inner join new_items on popularity.item_id = new_items.item_id
    where popularity.n_learnable_train_interactions > 0

),

final as (

    select * from in_session_events
    union all
    select * from in_sessions
    union all
    select * from in_transitions
    union all
    select * from in_popularity

)

select * from final
