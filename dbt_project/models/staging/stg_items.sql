with

checked as (

    select * from {{ ref('base_items') }}

),

final as (

    select
        item_id,
        title,
        description
    from checked
    where rejection_reason is null

)

select * from final
