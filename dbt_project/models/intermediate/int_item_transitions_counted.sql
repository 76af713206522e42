-- How often each item is directly followed by another in users' learnable train sequences
-- (validation and test interactions and new items never enter), with the successors
-- ranked. Two learnable interactions around a removed new item's are a transition.

with

train as (

    select user_id, item_id, position
    from {{ ref('int_learnable_train_interactions') }}

),

successions as (

    select
        item_id,
        lead(item_id) over (partition by user_id order by position) as next_item_id
    from train

),

counted as (

    select item_id, next_item_id, count(*) as n_transitions
    from successions
    where next_item_id is not null and next_item_id <> item_id
    group by item_id, next_item_id

),

final as (

    select
        item_id,
        next_item_id,
        n_transitions,
        row_number() over (partition by item_id order by n_transitions desc, next_item_id) as successor_rank
    from counted

)

select * from final
