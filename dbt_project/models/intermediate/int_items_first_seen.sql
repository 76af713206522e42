-- When each catalog item was first landed. Incremental: an item keeps the time of the build
-- that first saw it, so a catalog refresh can tell the items that arrived since the first
-- load (tagged without waiting for behavior) from the initial catalog.

{{ config(materialized='incremental', unique_key='item_id') }}

with

items as (

    select * from {{ ref('stg_items') }}

),

unseen as (

    select items.item_id
    from items
    {% if is_incremental() %}
    where items.item_id not in (select item_id from {{ this }})
    {% endif %}

),

final as (

    select
        item_id,
        current_timestamp::timestamp as first_seen_at
    from unseen

)

select * from final
