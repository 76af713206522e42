-- The k-core fixpoint was reached: after filtering, every user and every item still has
-- at least the required number of interactions. If this fails, raise the
-- kcore_max_iterations var.

with

interactions as (

    select * from {{ ref('int_interactions_filtered') }}

),

users_below as (

    select 'user' as side, user_id as id, count(*) as n_interactions
    from interactions
    group by user_id
    having count(*) < {{ var('kcore_min_user_interactions') }}

),

items_below as (

    select 'item' as side, item_id as id, count(*) as n_interactions
    from interactions
    group by item_id
    having count(*) < {{ var('kcore_min_item_interactions') }}

),

final as (

    select * from users_below
    union all
    select * from items_below

)

select * from final
