-- The evaluation shards, typed.

with

source as (

    select * from {{ source('evaluation', 'eval_results') }}

),

final as (

    select
        run_id,
        dataset,
        split,
        protocol,
        setting,
        method,
        tag_source,
        bucket,
        metric,
        value,
        std_error,
        n_users,
        n_candidates,
        n_items,
        seed,
        config,
        cast(created_at as timestamp) as created_at
    from source

)

select * from final
