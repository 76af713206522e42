{#- The final rejection reason of a row: its own defect (the invalid_reason column), else
    duplicate_reason when an earlier valid row (by source_row) has the same
    duplicate_keys. Ranking among valid rows only means a defective first copy never
    hides a good later one. -#}
{% macro rejection_reason(duplicate_keys, duplicate_reason) -%}
    coalesce(
        invalid_reason,
        case
            when row_number() over (
                partition by invalid_reason is null, {{ duplicate_keys | join(', ') }}
                order by source_row
            ) > 1
                then '{{ duplicate_reason }}'
        end
    )
{%- endmacro %}
