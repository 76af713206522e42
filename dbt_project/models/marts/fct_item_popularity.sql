-- Item popularity counted on train interactions only, so nothing sees validation or test
-- targets. Every catalog item has a row; cold items count zero. Two train counts: all of
-- them (the popularity rank, which picks the items a quick run tags, new ones included)
-- and the learnable ones (0 for a new item), the only popularity anything learns from.

with

items as (

    select item_id from {{ ref('stg_items') }}

),

interactions as (

    select * from {{ ref('int_interactions_split') }}

),

learnable as (

    select item_id, count(*) as n_learnable_train_interactions
    from {{ ref('int_learnable_train_interactions') }}
    group by item_id

),

counted as (

    select
        item_id,
        count(*) as n_interactions,
        count(*) filter (where split = 'train') as n_train_interactions,
        count(distinct user_id) filter (where split = 'train') as n_train_users
    from interactions
    group by item_id

),

final as (

    select
        items.item_id,
        coalesce(counted.n_interactions, 0) as n_interactions,
        coalesce(counted.n_train_interactions, 0) as n_train_interactions,
        coalesce(counted.n_train_users, 0) as n_train_users,
        coalesce(learnable.n_learnable_train_interactions, 0) as n_learnable_train_interactions,
        row_number() over (
            order by coalesce(counted.n_train_interactions, 0) desc, items.item_id
        ) as popularity_rank,
        counted.item_id is not null as is_in_kcore
    from items
    left join counted on items.item_id = counted.item_id
    left join learnable on items.item_id = learnable.item_id

)

select * from final
