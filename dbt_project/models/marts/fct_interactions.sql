-- Every interaction that survived the k-core, with its place in the user's sequence,
-- its split, whether the pipeline may learn from it (a train interaction with an item
-- that is not new) and, if so, its behavior session.

with

interactions as (

    select * from {{ ref('int_interactions_split') }}

),

learnable as (

    select event_id from {{ ref('int_learnable_train_interactions') }}

),

sessionized as (

    select event_id, session_id from {{ ref('int_train_interactions_sessionized') }}

),

final as (

    select
        interactions.event_id,
        interactions.user_id,
        interactions.item_id,
        interactions.event_at,
        interactions.event_type,
        interactions.event_value,
        interactions.position,
        interactions.n_user_interactions,
        interactions.split,
        learnable.event_id is not null as is_learnable,
        sessionized.session_id
    from interactions
    left join learnable on interactions.event_id = learnable.event_id
    left join sessionized on interactions.event_id = sessionized.event_id

)

select * from final
