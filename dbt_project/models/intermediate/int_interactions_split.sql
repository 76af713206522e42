-- Per-user chronological sequence and leave-one-out split: a user's last interaction is
-- the test target, the one before it the validation target, the rest is train. Equal
-- timestamps are ordered by item_id, then event type and input row, so the split does
-- not depend on how the input file was sorted. Users with fewer than three interactions
-- (possible only with a k-core below 3) keep everything in train.

with

interactions as (

    select * from {{ ref('int_interactions_filtered') }}

),

sequenced as (

    select
        *,
        row_number() over (
            partition by user_id
            order by event_at, item_id, event_type, source_row
        ) as position,
        count(*) over (partition by user_id) as n_user_interactions
    from interactions

),

final as (

    select
        event_id,
        user_id,
        item_id,
        event_at,
        event_type,
        event_value,
        position,
        n_user_interactions,
        case
            when n_user_interactions < 3 then 'train'
            when position = n_user_interactions then 'test'
            when position = n_user_interactions - 1 then 'validation'
            else 'train'
        end as split
    from sequenced

)

select * from final
