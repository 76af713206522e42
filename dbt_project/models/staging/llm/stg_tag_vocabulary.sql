{{ config(tags=['canonical_base_tags']) }}

with

source as (

    select * from {{ source('llm', 'tag_vocabulary') }}

),

final as (

    select
        raw_tag,
        canonical_tag,
        reason,
        similarity,
        n_items,
        canonical_tag is null as is_dropped,
        config_id
    from source

)

select * from final
