-- What the pipeline learns behavior from: the train interactions whose item is not new
-- (new-item protocol). Behavior sessions and transitions are built over these rows only,
-- so two learnable interactions around a removed new one become neighbours; the users'
-- sequences (fct_user_sequences) keep every interaction for evaluation.

with

train as (

    select * from {{ ref('int_interactions_split') }}
    where split = 'train'

),

new_items as (

    select item_id from {{ ref('int_kcore_items_flagged_new') }}
    where is_new_item

),

final as (

    select
        train.event_id,
        train.user_id,
        train.item_id,
        train.event_at,
        train.position
    from train
    anti join new_items on train.item_id = new_items.item_id

)

select * from final
