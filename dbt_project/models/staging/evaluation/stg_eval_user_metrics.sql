-- The per-user evaluation shards, typed: one row per user and ranking.

with

source as (

    select * from {{ source('evaluation', 'eval_user_metrics') }}

),

final as (

    -- every column as written (run_id, split, protocol, setting, method, tag_source, bucket,
    -- seed, user_id and the metrics), without the shard bookkeeping
    select * exclude (item_shard) replace (
        cast(target_rank as bigint) as target_rank,
        cast(hit_at_10 as double) as hit_at_10,
        cast(ndcg_at_10 as double) as ndcg_at_10
    )
    from source

)

select * from final
