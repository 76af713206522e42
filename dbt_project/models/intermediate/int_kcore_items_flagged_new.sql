-- The new-item protocol's one rule: a stable share of the k-core items is treated as new
-- (no behavior to learn from). An item's draw is the first 8 hex digits of md5(item_id)
-- as an integer / 2^32, uniform in [0, 1) and the same on every machine and DuckDB version
-- (unlike hash()); the item is new when its draw is below new_item_share (0: none is).

with

kcore_items as (

    select distinct item_id from {{ ref('int_interactions_filtered') }}

),

drawn as (

    select
        item_id,
        cast(('0x' || left(md5(item_id), 8)) as ubigint) / 4294967296.0 as new_item_draw
    from kcore_items

),

final as (

    select
        item_id,
        new_item_draw,
        new_item_draw < cast({{ var('new_item_share') }} as double) as is_new_item
    from drawn

)

select * from final
