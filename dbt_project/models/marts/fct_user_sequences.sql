-- One row per user: the chronological train sequence and the leave-one-out targets.

with

interactions as (

    select * from {{ ref('int_interactions_split') }}

),

final as (

    select
        user_id,
        max(n_user_interactions) as n_interactions,
        count(*) filter (where split = 'train') as n_train_interactions,
        list(item_id order by position) filter (where split = 'train') as train_item_ids,
        any_value(item_id) filter (where split = 'validation') as validation_item_id,
        any_value(position) filter (where split = 'validation') as validation_position,
        any_value(event_at) filter (where split = 'validation') as validation_at,
        any_value(item_id) filter (where split = 'test') as test_item_id,
        any_value(position) filter (where split = 'test') as test_position,
        any_value(event_at) filter (where split = 'test') as test_at,
        min(event_at) as first_event_at,
        max(event_at) as last_event_at
    from interactions
    group by user_id

)

select * from final
