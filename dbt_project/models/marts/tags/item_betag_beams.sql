-- Every beam of each item's latest BETag generation (beam 0 = the base tags it started from).

with

latest as (

    select * from {{ ref('int_betag_generations_selected') }}
    where variant = 'betag'

),

beams as (

    select
        latest.item_id,
        beam.beam_tags,
        beam.beam_number - 1 as beam_index,
        latest.adapter_id,
        latest.generated_at,
        latest.beam_texts,
        len(latest.beam_tags) - len(latest.beam_texts) as n_base_beams
    from latest,
        unnest(latest.beam_tags) with ordinality as beam(beam_tags, beam_number)

),

final as (

    select
        item_id,
        beam_index,
        beam_index < n_base_beams as is_base_tags,
        case when beam_index >= n_base_beams then beam_texts[beam_index - n_base_beams + 1] end as beam_text,
        beam_tags as tags,
        len(beam_tags) as n_tags,
        adapter_id,
        generated_at
    from beams

)

select * from final
