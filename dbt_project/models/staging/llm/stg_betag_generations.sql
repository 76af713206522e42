with

source as (

    select * from {{ source('llm', 'betags') }}

),

final as (

    select
        item_id,
        variant,
        beam_texts,
        beam_tags,
        tags,
        adapter_id,
        model,
        precision,
        decoding,
        prompt_version,
        input_hash,
        coalesce(item_shard, 'all') as item_shard,
        cast(generated_at as timestamp) as generated_at
    from source

)

select * from final
