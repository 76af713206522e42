-- Each item's BETags per variant, ranked as the betag_aggregation var says: count (the
-- generation's own ranking, llm/betag.py aggregate_beams: beams that wrote the tag, then
-- position) or idf (beams x ln(N / df): df = the variant's items whose generated beams hold
-- the tag, at least 1; N = its items; then position, then first appearance), the generation's
-- top-K kept. idf is a catalog-wide statistic, so it is computed here, where the whole
-- catalog is visible; the evaluation lever "betag:idf" (evaluation/runner.py) is its twin.

{% if var('betag_aggregation') not in ['count', 'idf'] %}
    {{ exceptions.raise_compiler_error("betag_aggregation must be count or idf, not " ~ var('betag_aggregation')) }}
{% endif %}

with

generations as (

    select * from {{ ref('int_betag_generations_selected') }}

),

{% if var('betag_aggregation') == 'idf' %}

-- every tag of every beam, at its first position in the beam
beam_entries as (

    select
        generations.item_id,
        generations.variant,
        beam.beam_number - 1 as beam_index,
        beam.beam_number > len(generations.beam_tags) - len(generations.beam_texts) as is_generated,
        entry.tag,
        min(entry.tag_number) as first_number
    from generations,
        unnest(generations.beam_tags) with ordinality as beam(tags, beam_number),
        unnest(beam.tags) with ordinality as entry(tag, tag_number)
    group by all

),

-- a tag's position among the beam's distinct tags, as aggregate_beams counts it
beam_positions as (

    select
        *,
        row_number() over (partition by item_id, variant, beam_index order by first_number) - 1 as tag_position
    from beam_entries

),

catalog_sizes as (

    select variant, count(*) as n_items
    from generations
    group by variant

),

item_frequencies as (

    select variant, tag, count(distinct item_id) as n_items_generated
    from beam_positions
    where is_generated
    group by variant, tag

),

item_tags as (

    select
        item_id,
        variant,
        tag,
        count(*) as n_beams,
        sum(1.0 / (1 + tag_position) order by beam_index) as score,
        min([beam_index, tag_position]) as first_seen
    from beam_positions
    group by item_id, variant, tag

),

weighted as (

    select
        item_tags.*,
        item_tags.n_beams * ln(
            catalog_sizes.n_items / greatest(coalesce(item_frequencies.n_items_generated, 0), 1)
        ) as tag_weight
    from item_tags
    inner join catalog_sizes using (variant)
    left join item_frequencies using (variant, tag)

),

ranked as (

    select
        weighted.*,
        row_number() over (
            partition by weighted.item_id, weighted.variant
            order by weighted.tag_weight desc, weighted.score desc, weighted.first_seen
        ) as tag_rank,
        len(generations.tags) as top_k
    from weighted
    inner join generations using (item_id, variant)

),

ranked_lists as (

    select
        item_id,
        variant,
        list({'tag': tag, 'n_beams': n_beams, 'score': score} order by tag_rank) as tags
    from ranked
    where tag_rank <= top_k
    group by item_id, variant

),

-- a generation without tags keeps its (empty) list
final as (

    select
        generations.item_id,
        generations.variant,
        coalesce(ranked_lists.tags, generations.tags) as tags
    from generations
    left join ranked_lists using (item_id, variant)

)

{% else %}

final as (

    select item_id, variant, tags
    from generations

)

{% endif %}

select * from final
