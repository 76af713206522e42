{#- Fails when the model has no rows: an empty mart means an upstream input went missing. -#}
{% test not_empty(model) %}

select 'no rows' as problem
where not exists (select 1 from {{ model }})

{% endtest %}
