with

checked as (

    select * from {{ ref('base_item_attributes') }}

),

final as (

    select
        item_id,
        attribute_name,
        attribute_value,
        source_row
    from checked
    where rejection_reason is null

)

select * from final
