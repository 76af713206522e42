-- Leave-one-out: every user with three or more interactions has exactly one test target
-- at the last position and one validation target right before it, and nothing in train
-- comes after either of them.

with

interactions as (

    select * from {{ ref('int_interactions_split') }}
    where n_user_interactions >= 3

),

per_user as (

    select
        user_id,
        count(*) filter (where split = 'test') as n_test,
        count(*) filter (where split = 'validation') as n_validation,
        max(position) filter (where split = 'test') as test_position,
        max(position) filter (where split = 'validation') as validation_position,
        max(position) filter (where split = 'train') as last_train_position,
        max(n_user_interactions) as n_user_interactions
    from interactions
    group by user_id

),

final as (

    select *
    from per_user
    where n_test <> 1
        or n_validation <> 1
        or test_position <> n_user_interactions
        or validation_position <> n_user_interactions - 1
        or last_train_position >= validation_position

)

select * from final
