-- The current base tags of each item as generated, before the tag vocabulary (to measure what
-- the vocabulary changes).

with

current_generations as (

    select * from {{ ref('int_base_tag_generations_current') }}

),

final as (

    select
        item_id,
        tags
    from current_generations

)

select * from final
