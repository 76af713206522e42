-- Every evaluation result of every run: one metric value per row, with its protocol.

with

results as (

    select * from {{ ref('stg_eval_results') }}

),

final as (

    select * from results

)

select * from final
