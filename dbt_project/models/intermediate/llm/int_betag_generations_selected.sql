-- Each item's current BETag generation per variant: its latest one (earlier ones stay in staging).

with

generations as (

    select * from {{ ref('stg_betag_generations') }}

),

final as (

    select * from generations
    qualify row_number() over (partition by item_id, variant order by generated_at desc, adapter_id desc) = 1

)

select * from final
