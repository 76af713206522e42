-- One row per behavior session of learnable train interactions (no new item), the items
-- in order: the input of behavior-enhanced finetuning. Sessions shorter than
-- session_min_items are left out.

with

sessionized as (

    select * from {{ ref('int_train_interactions_sessionized') }}

),

aggregated as (

    select
        session_id,
        user_id,
        count(*) as n_items,
        list(item_id order by position) as item_ids,
        min(event_at) as started_at,
        max(event_at) as ended_at,
        min(position) as first_position,
        max(position) as last_position
    from sessionized
    group by session_id, user_id

),

final as (

    select * from aggregated
    where n_items >= {{ var('session_min_items') }}

)

select * from final
