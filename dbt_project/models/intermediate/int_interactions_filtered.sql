-- k-core filtering: drop every interaction of a user with fewer than
-- kcore_min_user_interactions or of an item with fewer than kcore_min_item_interactions,
-- and repeat, since each removal can push others under the threshold. Both sides are
-- filtered in the same pass; any removal order reaches the same (unique, maximal) core.
-- SQL has no loop, so the pass is unrolled kcore_max_iterations times: passes after the
-- fixpoint remove nothing, and the singular test assert_kcore_is_stable fails if the
-- fixpoint was not reached.

{%- set min_user = var('kcore_min_user_interactions') %}
{%- set min_item = var('kcore_min_item_interactions') %}

with

pass_0 as (

    select event_id, user_id, item_id, event_at, event_type, event_value, source_row
    from {{ ref('stg_events') }}

),

{% for i in range(1, var('kcore_max_iterations') + 1) %}
pass_{{ i }} as (

    select * from pass_{{ i - 1 }}
    qualify count(*) over (partition by user_id) >= {{ min_user }}
        and count(*) over (partition by item_id) >= {{ min_item }}

),

{% endfor %}
final as (

    select * from pass_{{ var('kcore_max_iterations') }}

)

select * from final
