-- The count-based reference tags (no LLM, not BETag): each item's base tags plus the base
-- tags of its most frequent train successors, scored by transition counts. BETag has to
-- match it where behavior is plentiful and beat it where there is little.

with

base_tags as (

    select item_id, tag from {{ ref('item_base_tags') }}

),

successors as (

    select * from {{ ref('int_item_transitions_counted') }}
    where successor_rank <= {{ var('propagation_max_successors') }}

),

tagged_items as (

    select distinct item_id from base_tags

),

-- an item's own tags weigh as much as all its kept successors together (at least 1), so
-- they stay on top unless most successors agree on another tag
own_weight as (

    select
        tagged_items.item_id,
        greatest(coalesce(sum(successors.n_transitions), 0), 1) as weight
    from tagged_items
    left join successors on tagged_items.item_id = successors.item_id
    group by tagged_items.item_id

),

tag_sources as (

    select item_id, item_id as source_item_id, weight from own_weight
    union all
    select successors.item_id, successors.next_item_id, successors.n_transitions
    from successors
    inner join tagged_items on successors.item_id = tagged_items.item_id

),

scored as (

    select
        tag_sources.item_id,
        base_tags.tag,
        sum(tag_sources.weight) as score,
        count(*) as n_source_items
    from tag_sources
    inner join base_tags on tag_sources.source_item_id = base_tags.item_id
    group by tag_sources.item_id, base_tags.tag

),

ranked as (

    select
        *,
        row_number() over (partition by item_id order by score desc, tag) as tag_rank
    from scored

),

final as (

    select item_id, tag, score, n_source_items, tag_rank
    from ranked
    where tag_rank <= {{ var('propagation_top_k') }}

)

select * from final
