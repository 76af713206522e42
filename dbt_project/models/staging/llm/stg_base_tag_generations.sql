{{ config(tags=['base_tag_generations']) }}

with

source as (

    select * from {{ source('llm', 'base_tags') }}

),

final as (

    select
        item_id,
        tags,
        len(tags) as n_tags,
        model,
        model_fingerprint,
        prompt_version,
        precision,
        generation,
        input_hash,
        coalesce(item_shard, 'all') as item_shard,
        cast(generated_at as timestamp) as generated_at
    from source

)

select * from final
