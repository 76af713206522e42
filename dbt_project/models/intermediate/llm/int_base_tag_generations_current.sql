-- The current base-tag generation of each item: its latest one, whatever model or prompt
-- wrote it (earlier ones stay in staging). The one definition of "an item's current base
-- tags" before the tag vocabulary: the tag_vocabulary asset reads it, item_base_tags
-- canonicalizes it, item_tag_documents shows it as the base_raw source.

{{ config(tags=['base_tag_generations']) }}

with

generations as (

    select * from {{ ref('stg_base_tag_generations') }}

),

final as (

    select * from generations
    qualify row_number() over (partition by item_id order by generated_at desc, prompt_version desc) = 1

)

select * from final
