-- Paired differences between tag sources, user by user: for each pair (a, b) of the
-- betag_paired_comparisons var and each run, split, protocol, setting, method, seed, metric
-- and bucket (every bucket the rows carry, plus all), over the users both sources were ranked
-- for: d_u = m_u(a) - m_u(b), mean_difference = mean(d), std_error = sd(d) / sqrt(n) (sample
-- sd; null for one user). Pairing removes what the two sources share (how hard each user's
-- target is), so the SE is that of the difference, not of two independent means.

with

user_metrics as (

    select * from {{ ref('stg_eval_user_metrics') }}

),

comparisons as (

    select * from (
        values
        {%- for comparison in var('betag_paired_comparisons') %}
            ('{{ comparison.a }}', '{{ comparison.b }}'){{ "," if not loop.last }}
        {%- endfor %}
    ) as t(tag_source_a, tag_source_b)

),

metric_values as (

    select run_id, split, protocol, setting, method, tag_source, bucket, seed, user_id,
        'H@10' as metric, hit_at_10 as value
    from user_metrics
    union all
    select run_id, split, protocol, setting, method, tag_source, bucket, seed, user_id,
        'N@10' as metric, ndcg_at_10 as value
    from user_metrics

),

user_differences as (

    select
        a.run_id,
        a.split,
        a.protocol,
        a.setting,
        a.method,
        comparisons.tag_source_a,
        comparisons.tag_source_b,
        -- a user's target, and so its bucket, is the same whatever the tag source
        a.bucket,
        a.metric,
        a.seed,
        a.user_id,
        a.value - b.value as difference
    from comparisons
    inner join metric_values as a
        on a.tag_source = comparisons.tag_source_a
    inner join metric_values as b
        on b.tag_source = comparisons.tag_source_b
        and a.run_id = b.run_id
        and a.split = b.split
        and a.protocol = b.protocol
        and a.setting = b.setting
        and a.method = b.method
        and a.metric = b.metric
        and a.seed = b.seed
        and a.user_id = b.user_id

),

bucketed as (

    select * from user_differences
    union all
    select * replace ('all' as bucket) from user_differences

),

final as (

    select
        run_id,
        split,
        protocol,
        setting,
        method,
        tag_source_a,
        tag_source_b,
        bucket,
        metric,
        seed,
        avg(difference) as mean_difference,
        sqrt(var_samp(difference) / count(*)) as std_error,
        count(*) as n_users,
        count(*) filter (where difference > 0) as n_a_better,
        count(*) filter (where difference < 0) as n_b_better
    from bucketed
    group by all

)

select * from final
