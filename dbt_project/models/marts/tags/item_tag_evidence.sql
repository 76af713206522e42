-- Why an item has each of its current BETags: whether the base tags the decode started from
-- (beam 0) hold it, how many generated beams wrote it, and the behavior behind it: the
-- item's train successors whose current base tags (item_base_tags) hold it, most frequent
-- first. The finetuned model learned to write the next item's base tags, so those
-- successors are what a BETag can be checked against; a BETag none of them holds comes
-- from the model alone.

with

betags as (

    select * from {{ ref('item_betags') }}

),

beams as (

    select * from {{ ref('item_betag_beams') }}

),

base_tags as (

    select * from {{ ref('item_base_tags') }}

),

transitions as (

    select * from {{ ref('int_item_transitions_counted') }}

),

items as (

    select * from {{ ref('dim_items') }}

),

-- is_in_base_tags stays null when the generation kept no base-tag beam (include_base_tags off)
beam_evidence as (

    select
        betags.item_id,
        betags.tag,
        count(*) filter (where not beams.is_base_tags) as n_generated_beams,
        count(*) filter (
            where not beams.is_base_tags and list_contains(beams.tags, betags.tag)
        ) as n_generated_beams_with_tag,
        bool_or(list_contains(beams.tags, betags.tag)) filter (where beams.is_base_tags) as is_in_base_tags
    from betags
    inner join beams on betags.item_id = beams.item_id
    group by betags.item_id, betags.tag

),

successor_totals as (

    select
        item_id,
        count(*) as n_train_successors,
        sum(n_transitions) as n_train_transitions
    from transitions
    group by item_id

),

successors_with_tag as (

    select
        betags.item_id,
        betags.tag,
        transitions.next_item_id,
        transitions.n_transitions,
        transitions.successor_rank,
        items.title
    from betags
    inner join transitions on betags.item_id = transitions.item_id
    inner join base_tags on transitions.next_item_id = base_tags.item_id and betags.tag = base_tags.tag
    inner join items on transitions.next_item_id = items.item_id

),

successor_evidence as (

    select
        item_id,
        tag,
        count(*) as n_successors_with_tag,
        sum(n_transitions) as n_transitions_with_tag,
        -- successor_rank orders by transitions, ties by item id
        list(
            {'item_id': next_item_id, 'title': title, 'n_transitions': n_transitions} order by successor_rank
        )[1:{{ var('tag_evidence_top_successors') }}] as top_successors
    from successors_with_tag
    group by item_id, tag

),

final as (

    select
        betags.item_id,
        betags.tag,
        betags.tag_rank,
        betags.weight,
        beam_evidence.is_in_base_tags,
        beam_evidence.n_generated_beams_with_tag,
        beam_evidence.n_generated_beams,
        coalesce(successor_evidence.n_successors_with_tag, 0) as n_successors_with_tag,
        coalesce(successor_totals.n_train_successors, 0) as n_train_successors,
        coalesce(successor_evidence.n_transitions_with_tag, 0) as n_transitions_with_tag,
        coalesce(successor_totals.n_train_transitions, 0) as n_train_transitions,
        coalesce(successor_evidence.top_successors, []) as top_successors,
        betags.adapter_id,
        betags.generated_at
    from betags
    inner join beam_evidence on betags.item_id = beam_evidence.item_id and betags.tag = beam_evidence.tag
    left join successor_evidence on betags.item_id = successor_evidence.item_id and betags.tag = successor_evidence.tag
    left join successor_totals on betags.item_id = successor_totals.item_id

)

select * from final
