-- The latest base tags of each item as generated, before the tag vocabulary (to measure what
-- the vocabulary changes).

with

generations as (

    select * from {{ ref('stg_base_tag_generations') }}

),

final as (

    select
        item_id,
        tags
    from generations
    qualify row_number() over (partition by item_id order by generated_at desc, prompt_version desc) = 1

)

select * from final
